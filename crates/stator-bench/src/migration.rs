//! `stator bench migration`: a live move of a replica holding tens of MiB of state while
//! a client writes at a steady rate, beside a stop-and-copy move of the same state.
//!
//! Four hosts run on their own threads and single-threaded runtimes, as in
//! [`super::replication`]; one kv group lives on hosts 1-3. After a fill to the requested
//! state size, a paced writer runs for the whole benchmark and every request's latency is
//! taken from the moment it was *scheduled*, so a stall shows up in the percentiles
//! instead of silently slowing the writer. The move swaps host 1 (the leader or a
//! follower) for host 4 by repeating `Host::reconcile_membership` on whoever leads: the
//! learner/catch-up/joint-change path every drain and consolidation uses.
//!
//! The baseline is what a checkpoint/restore (CRIU-style) move does with the same
//! state: stop the writes, dump the state, copy it to the new host over loopback TCP,
//! restore it, resume. Its downtime is measured; the writes that arrive meanwhile queue.

use super::figures::{ratio, round2};
use super::hosts::{kv_set, HostThreads};
use super::latency::Recorder;
use super::threadstat::Spent;
use super::timeline::{self, Timeline};
use anyhow::Context;
use serde::Serialize;
use stator_api::ids::GroupId;
use stator_harness::pace::{PaceOptions, PacedLoad};
use stator_kv::{KvMachine, Value};
use stator_replication::{GroupOptions, Host, MembershipStep, NodeId, ReplicaClient, ReplicaRole};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The one partition group moved.
fn group() -> GroupId {
    GroupId::new(1, 0)
}
/// Hosts started: three members and the destination of the move.
const HOSTS: u64 = 4;
/// The host whose replica moves.
const SOURCE: NodeId = 1;
/// The host it moves to.
const DESTINATION: NodeId = 4;
/// Concurrent clients filling the state; each keeps one write in flight, so the leader
/// batches this many per round.
const FILL_CLIENTS: usize = 32;
/// A request not acknowledged within this is a failed request.
const OP_DEADLINE: Duration = Duration::from_secs(5);
/// Paced writes before measuring (connections, allocator).
const WARMUP: Duration = Duration::from_secs(1);
/// Measured window before the move.
const BEFORE: Duration = Duration::from_secs(5);
/// Writes kept up after the move, so a late stall is seen.
const AFTER: Duration = Duration::from_secs(2);
/// Pause between reconcile steps; a step is cheap, catch-up is what takes time.
const RECONCILE_PAUSE: Duration = Duration::from_millis(10);
/// A move that has not converged by then is a failed benchmark, not a number.
const MIGRATION_TIMEOUT: Duration = Duration::from_secs(300);
/// Bound on waits for a leader or for replicas to converge.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Writes scheduled during the move listed in the timeline as the slowest (the p99 of a
/// move of a few hundred writes is its second or third slowest write).
const SLOWEST_LISTED: usize = 5;
/// A reconcile step taking longer than this shows its duration in the timeline.
const SLOW_STEP: Duration = Duration::from_millis(1);
/// Paced requests in flight at once; past this a request waits (and the wait counts in
/// the latency, which is taken from the scheduled time).
const MAX_IN_FLIGHT: usize = 4_096;
/// Paced requests waiting beyond those; a tick past this is missed and counted. Requests
/// in flight fail after [`OP_DEADLINE`], so this is only reached by a runaway stall.
const MAX_QUEUED: usize = 65_536;

/// A diagnostic, off unless set: the nice level of the destination host's thread. The
/// four hosts share this machine's cores, where agents would each have their own; a
/// learner catching up then takes CPU from the voters' threads. At a high nice level it
/// yields to them, which shows how much of a move's p99 is that contention (the learner
/// on a machine of its own) and how much is the leader's own work. Its figures are not
/// the benchmark's: reports made with it must say so.
const DESTINATION_NICE_ENV: &str = "STATOR_BENCH_DESTINATION_NICE";

fn destination_nice() -> Option<i32> {
    std::env::var(DESTINATION_NICE_ENV).ok()?.parse().ok()
}

/// This instant on `CLOCK_MONOTONIC` (the clock of [`Instant`] and of `perf record -k
/// CLOCK_MONOTONIC`), seconds: lines a profile's samples up with the timeline.
fn monotonic_secs() -> f64 {
    // SAFETY: clock_gettime writes one timespec into the zeroed struct it is given.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: CLOCK_MONOTONIC is always available; `ts` is valid for writes.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// Which replica moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MoveKind {
    /// The leader: it commits the change, steps down, the others elect.
    Leader,
    /// A follower: the leader stays.
    Follower,
}

/// What to measure.
#[derive(Debug, Clone)]
pub struct Options {
    /// State to fill the group with before the move.
    pub state_mib: u64,
    /// Bytes per value, for the fill and the paced writes.
    pub value_bytes: usize,
    /// Paced writes per second during the whole run.
    pub rate_per_sec: u32,
    /// Which replica moves.
    pub moved: MoveKind,
    /// The group's snapshot policy (`GroupOptions::snapshot_every_entries`); `None`: the
    /// default. Smaller than the fill's entries, the log is purged and a learner catches
    /// up from a snapshot instead of the log.
    pub snapshot_every_entries: Option<u64>,
    /// Every host's learner catch-up rate, bytes per second (0: unlimited).
    pub learner_catchup_bytes_per_sec: u64,
}

/// The stop-and-copy move of the same state.
#[derive(Debug, Clone, Serialize)]
pub struct Baseline {
    /// What was measured and what it leaves out.
    pub models: &'static str,
    /// Bytes of the dumped image.
    pub image_bytes: u64,
    /// Dumping the state into an image.
    pub dump_ms: f64,
    /// Copying the image over loopback TCP.
    pub transfer_ms: f64,
    /// Rebuilding the state from the image on the receiving side.
    pub restore_ms: f64,
    /// Writes stopped, from the dump's start to the restored copy's readiness.
    pub baseline_stop_and_copy_downtime_ms: f64,
    /// Paced writes that would arrive during the downtime and wait for it to end.
    pub queued_requests: u64,
    /// Of those, the ones whose wait would pass the request deadline.
    pub failed_requests: u64,
}

/// Everything one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Paced writes not acknowledged within their deadline, over the whole run.
    pub failed_requests: u64,
    /// From the first reconcile step to the membership being in sync on the new leader.
    pub migration_ms: u64,
    /// App state of the group when the move started (the leader's count).
    pub state_bytes: u64,
    /// Paced-write latency over the window before the move.
    pub p99_us_before: u64,
    /// Paced-write latency of the writes scheduled during the move.
    pub p99_us_during: u64,
    /// Median before the move.
    pub p50_us_before: u64,
    /// Median during the move.
    pub p50_us_during: u64,
    /// Slowest write scheduled during the move: the worst stall a client saw.
    pub max_us_during: u64,
    /// p99 after the move (the new membership).
    pub p99_us_after: u64,
    /// Writes measured before and during the move.
    pub requests_before: u64,
    /// Writes scheduled during the move.
    pub requests_during: u64,
    /// Paced writes not sent because every request slot was taken and the queue full
    /// (0 unless a stall outlasts the request deadline many times over).
    pub missed_ticks: u64,
    /// `leader` or `follower`.
    pub moved: MoveKind,
    /// Acknowledged writes, fill and paced, each checked on the new replica afterwards.
    pub acked_writes: u64,
    /// Acknowledged writes missing or wrong on the new replica.
    pub lost_acked_writes: u64,
    /// Whether hosts 2-4 reached the same applied index and the same app snapshot.
    pub converged: bool,
    /// Bytes per value.
    pub value_bytes: usize,
    /// Paced writes per second.
    pub rate_per_sec: u32,
    /// The stop-and-copy move of the same state, measured in the same run.
    pub baseline: Baseline,
    /// stator beside the baseline.
    pub ratios: Ratios,
    /// The hosts' learner catch-up rate, MiB per second (0: unlimited).
    pub learner_catchup_mib_per_sec: f64,
    /// Bytes the hosts fed the learner through the catch-up bucket (0 when unlimited).
    pub paced_bytes: u64,
    /// The time those sends waited in the bucket, in ms.
    pub paced_wait_ms: f64,
    /// What each host's thread spent during the move (host id -> CPU, time waiting for a
    /// core, minor page faults); empty where the counters cannot be read (not Linux).
    pub threads_during: BTreeMap<NodeId, Spent>,
    /// The destination host's thread's nice level when `STATOR_BENCH_DESTINATION_NICE`
    /// set one (a diagnostic run, not the benchmark's figure); `None` otherwise.
    pub destination_nice: Option<i32>,
    /// What happened during the move, in ms from its start: reconcile steps, phases
    /// seen in the Raft metrics, runtime stalls per host, episodes of slow writes.
    pub timeline: Vec<String>,
}

/// stator beside stop-and-copy.
#[derive(Debug, Clone, Serialize)]
pub struct Ratios {
    /// The baseline's downtime over the worst write stall during stator's move.
    pub baseline_downtime_over_stator_max_stall: f64,
    /// stator's whole move over the baseline's downtime (stator moves for longer, but
    /// keeps serving while it does).
    pub stator_migration_over_baseline_downtime: f64,
}

/// Phases of the paced writer, by the time a request was scheduled (an index into
/// [`WriterOutcome::recorders`]).
const WARMING: usize = 0;
const PHASE_BEFORE: usize = 1;
const PHASE_DURING: usize = 2;
const PHASE_AFTER: usize = 3;

/// Runs the benchmark.
pub async fn run(opts: &Options) -> anyhow::Result<Report> {
    anyhow::ensure!(opts.value_bytes >= 16, "--value-bytes: at least 16");
    let secret = format!("{:032x}", rand::random::<u128>());
    let (threads, hosts) = start_hosts(&secret, opts.snapshot_every_entries).await?;
    for host in hosts.values() {
        host.set_learner_catchup_bytes_per_sec(opts.learner_catchup_bytes_per_sec);
    }
    if let Some(nice) = destination_nice() {
        threads.renice(DESTINATION, nice)?;
        eprintln!("migration: host {DESTINATION}'s thread at nice {nice} ({DESTINATION_NICE_ENV})");
    }
    let timeline = Timeline::default();
    let stalls = timeline.clone();
    threads
        .run_on_all(move |id, _host| {
            let stalls = stalls.clone();
            async move {
                tokio::spawn(timeline::watch_stalls(id, stalls));
                Ok(())
            }
        })
        .await?;
    let members = form_group(opts, &hosts).await?;
    let filled = fill_state(opts, &hosts, &secret, &members).await?;
    let moved = move_under_writes(opts, &threads, &hosts, &secret, &members, &timeline).await?;

    eprintln!("migration: checking convergence and acknowledged writes ...");
    let converged_state = converged_state(&hosts, &members.desired).await;
    let converged = converged_state.is_some();
    let lost_acked_writes = match &converged_state {
        Some(bytes) => {
            let machine = KvMachine::from_snapshot(bytes)
                .map_err(|e| anyhow::anyhow!("decoding the converged snapshot: {e}"))?;
            count_lost(&machine, filled, &moved.outcome.acked, opts.value_bytes)
        }
        None => filled + moved.outcome.acked.len() as u64,
    };

    eprintln!("migration: stop-and-copy baseline of the same state ...");
    let image = match converged_state {
        Some(bytes) => bytes,
        None => hosts[&DESTINATION]
            .replica(group())
            .context("destination lost its replica")?
            .sm
            .app_snapshot()
            .await
            .map_err(|e| anyhow::anyhow!("snapshot: {e}"))?,
    };
    let (paced_bytes, paced_wait_us) = hosts
        .values()
        .map(|h| h.learner_catchup_totals())
        .fold((0, 0), |(b, w), (hb, hw)| (b + hb, w + hw));
    let baseline = stop_and_copy(image, opts.rate_per_sec).await?;
    drop(hosts);
    drop(threads);
    let mut report = report(
        opts,
        moved,
        filled,
        lost_acked_writes,
        converged,
        baseline,
        &timeline,
    );
    report.paced_bytes = paced_bytes;
    report.paced_wait_ms = paced_wait_us as f64 / 1e3;
    Ok(report)
}

/// The hosts' addresses: the group starts on hosts 1-3 and moves to every host but
/// [`SOURCE`].
struct Members {
    /// Every host, the paced writer's and the fill's clients' member list.
    all: Vec<String>,
    /// The membership after the move.
    desired: BTreeMap<NodeId, String>,
}

/// Forms the group on hosts 1-3 with the member chosen to move as its first leader.
async fn form_group(opts: &Options, hosts: &BTreeMap<NodeId, Host>) -> anyhow::Result<Members> {
    let addrs: BTreeMap<NodeId, String> = hosts
        .iter()
        .map(|(id, h)| (*id, h.addr().to_string()))
        .collect();
    let initial: BTreeMap<NodeId, String> =
        addrs.range(1..=3).map(|(i, a)| (*i, a.clone())).collect();
    let desired: BTreeMap<NodeId, String> = addrs
        .iter()
        .filter(|(i, _)| **i != SOURCE)
        .map(|(i, a)| (*i, a.clone()))
        .collect();
    let first_leader = first_leader(opts);
    hosts[&first_leader].bootstrap(group(), &initial).await?;
    wait_for_leader(hosts, first_leader).await?;
    Ok(Members {
        all: addrs.values().cloned().collect(),
        desired,
    })
}

/// The bootstrapping host elects itself first: host 1 to move the leader, host 2 to
/// make host 1 a follower.
fn first_leader(opts: &Options) -> NodeId {
    match opts.moved {
        MoveKind::Leader => SOURCE,
        MoveKind::Follower => 2,
    }
}

/// Fills the group to `--state-mib`; the keys written.
async fn fill_state(
    opts: &Options,
    hosts: &BTreeMap<NodeId, Host>,
    secret: &str,
    members: &Members,
) -> anyhow::Result<u64> {
    let target_bytes = opts.state_mib << 20;
    eprintln!(
        "migration: filling to {} MiB with {}-byte values ...",
        opts.state_mib, opts.value_bytes
    );
    let fill_started = Instant::now();
    let filled = fill(hosts, secret, &members.all, target_bytes, opts.value_bytes).await?;
    eprintln!(
        "migration: {filled} keys written in {:.1} s",
        fill_started.elapsed().as_secs_f64()
    );
    // The fill's load may have moved leadership; the move needs the chosen role.
    wait_for_leader(hosts, first_leader(opts)).await?;
    Ok(filled)
}

/// What the move under paced writes measured.
struct Moved {
    outcome: WriterOutcome,
    /// From the first membership step to the new membership in sync.
    migration: Duration,
    /// The leader's state when the move began.
    state_bytes: u64,
    /// When the move began.
    move_started: Instant,
    /// What each host's thread spent during the move.
    threads: BTreeMap<NodeId, Spent>,
}

/// Paced writes through warm-up, the window before, the move and the window after.
async fn move_under_writes(
    opts: &Options,
    threads: &HostThreads,
    hosts: &BTreeMap<NodeId, Host>,
    secret: &str,
    members: &Members,
    timeline: &Timeline,
) -> anyhow::Result<Moved> {
    let mut writer = PacedWriter::start(
        secret,
        members.all.clone(),
        opts.rate_per_sec,
        opts.value_bytes,
    );
    tokio::time::sleep(WARMUP).await;
    writer.enter(PHASE_BEFORE);
    tokio::time::sleep(BEFORE).await;

    let leader = current_leader(hosts).context("no leader before the move")?;
    // An election in the window before (a loaded machine) can leave another host leading;
    // moving host 1 then would be a follower move reported as a leader move.
    anyhow::ensure!(
        leader == first_leader(opts),
        "host {leader} leads, not host {}: leadership changed in the window before the move \
         (its p99 includes an election); rerun, on a less loaded machine",
        first_leader(opts)
    );
    let state_bytes = hosts[&leader].status(group()).map_or(0, |s| s.state_bytes);
    eprintln!(
        "migration: moving the {} (host {SOURCE}) to host {DESTINATION}, {state_bytes} state bytes ...",
        match opts.moved {
            MoveKind::Leader => "leader",
            MoveKind::Follower => "follower",
        }
    );
    let phases = tokio::spawn(timeline::watch_phases(
        hosts.clone(),
        group(),
        DESTINATION,
        timeline.clone(),
    ));
    writer.enter(PHASE_DURING);
    let counters_before = threads.counters();
    let move_started = Instant::now();
    timeline.set_start(move_started);
    eprintln!(
        "migration: the move starts at CLOCK_MONOTONIC {:.6} s (perf record -k CLOCK_MONOTONIC); host threads {:?}",
        monotonic_secs(),
        threads.tids()
    );
    move_replica(hosts, &members.desired, timeline).await?;
    let migration = move_started.elapsed();
    let counters_after = threads.counters();
    let spent = counters_before
        .iter()
        .filter_map(|(id, before)| Some((*id, Spent::between(*before, *counters_after.get(id)?))))
        .collect();
    writer.enter(PHASE_AFTER);
    eprintln!("migration: in sync after {} ms", migration.as_millis());
    tokio::time::sleep(AFTER).await;
    let outcome = writer.stop().await;
    timeline.stop();
    let _ = phases.await;
    Ok(Moved {
        outcome,
        migration,
        state_bytes,
        move_started,
        threads: spent,
    })
}

/// The report: the paced writer's phases, the checks and the baseline beside them.
fn report(
    opts: &Options,
    moved: Moved,
    filled: u64,
    lost_acked_writes: u64,
    converged: bool,
    baseline: Baseline,
    timeline: &Timeline,
) -> Report {
    let rec = &moved.outcome.recorders;
    let before = &rec[PHASE_BEFORE].histogram;
    let slow = Duration::from_micros(2 * before.value_at_quantile(0.99));
    for e in timeline::slow_episodes(moved.outcome.during.clone(), slow) {
        timeline.event_at(
            e.first,
            format!(
                "writer: {} writes slower than {slow:.1?} scheduled over {:.1?}, worst {:.1?}",
                e.count,
                e.last.duration_since(e.first),
                e.worst
            ),
        );
    }
    for (at, latency) in slowest(&moved.outcome.during, SLOWEST_LISTED) {
        timeline.event_at(
            at,
            format!("writer: one of the slowest writes, {latency:.1?}"),
        );
    }
    let timeline_lines = timeline.lines(
        moved.move_started - Duration::from_millis(100),
        moved.move_started + moved.migration + Duration::from_millis(500),
    );
    let during = &rec[PHASE_DURING].histogram;
    let after = &rec[PHASE_AFTER].histogram;
    let failed_requests = rec.iter().map(|r| r.errors).sum();
    let max_us_during = during.max();
    let migration_ms = moved.migration.as_millis() as u64;
    Report {
        failed_requests,
        migration_ms,
        state_bytes: moved.state_bytes,
        p99_us_before: before.value_at_quantile(0.99),
        p99_us_during: during.value_at_quantile(0.99),
        p50_us_before: before.value_at_quantile(0.5),
        p50_us_during: during.value_at_quantile(0.5),
        max_us_during,
        p99_us_after: after.value_at_quantile(0.99),
        requests_before: before.len() + rec[PHASE_BEFORE].errors,
        requests_during: during.len() + rec[PHASE_DURING].errors,
        missed_ticks: moved.outcome.missed,
        moved: opts.moved,
        acked_writes: filled + moved.outcome.acked.len() as u64,
        lost_acked_writes,
        converged,
        value_bytes: opts.value_bytes,
        rate_per_sec: opts.rate_per_sec,
        ratios: Ratios {
            // The denominators are kept above zero, so the ratios always exist.
            baseline_downtime_over_stator_max_stall: ratio(
                baseline.baseline_stop_and_copy_downtime_ms * 1000.0,
                max_us_during.max(1) as f64,
            )
            .unwrap_or_default(),
            stator_migration_over_baseline_downtime: ratio(
                migration_ms as f64,
                baseline.baseline_stop_and_copy_downtime_ms.max(0.001),
            )
            .unwrap_or_default(),
        },
        baseline,
        learner_catchup_mib_per_sec: opts.learner_catchup_bytes_per_sec as f64
            / (1u64 << 20) as f64,
        paced_bytes: 0,
        paced_wait_ms: 0.0,
        threads_during: moved.threads.clone(),
        destination_nice: destination_nice(),
        timeline: timeline_lines,
    }
}

/// The `n` slowest of `writes` (scheduled time, latency), slowest first.
fn slowest(writes: &[(Instant, Duration)], n: usize) -> Vec<(Instant, Duration)> {
    let mut sorted = writes.to_vec();
    sorted.sort_by_key(|(_, latency)| std::cmp::Reverse(*latency));
    sorted.truncate(n);
    sorted
}

/// Prints the summary on stderr and, with `json`, the report on stdout's last line.
pub fn print_report(report: &Report, json: bool) {
    let b = &report.baseline;
    eprintln!("timeline of the move (ms from its start; slow = 2x p99 before):");
    for line in &report.timeline {
        eprintln!("  {line}");
    }
    eprintln!(
        "stator live move of the {:?} ({} state bytes, {} writes/s of {} B):",
        report.moved, report.state_bytes, report.rate_per_sec, report.value_bytes
    );
    eprintln!(
        "  migration {} ms, failed requests {}, p50 {} -> {} us, p99 {} -> {} us (after: {} us), worst stall {} us",
        report.migration_ms,
        report.failed_requests,
        report.p50_us_before,
        report.p50_us_during,
        report.p99_us_before,
        report.p99_us_during,
        report.p99_us_after,
        report.max_us_during
    );
    let rate = if report.learner_catchup_mib_per_sec > 0.0 {
        format!("{} MiB/s", report.learner_catchup_mib_per_sec)
    } else {
        "unlimited".into()
    };
    eprintln!(
        "  learner catch-up rate {rate}: {} bytes paced, waiting {:.1} ms in all",
        report.paced_bytes, report.paced_wait_ms
    );
    for (host, spent) in &report.threads_during {
        eprintln!(
            "  host {host}'s thread during the move: cpu {:.1} ms, waiting for a core {:.1} ms, {} minor faults",
            spent.cpu_ms, spent.runnable_wait_ms, spent.minor_faults
        );
    }
    eprintln!(
        "  converged {}, acknowledged writes {}, lost {}",
        report.converged, report.acked_writes, report.lost_acked_writes
    );
    eprintln!(
        "stop-and-copy of the same state ({} image bytes): downtime {:.1} ms (dump {:.1}, copy {:.1}, restore {:.1}), {} writes queued, {} past their deadline",
        b.image_bytes,
        b.baseline_stop_and_copy_downtime_ms,
        b.dump_ms,
        b.transfer_ms,
        b.restore_ms,
        b.queued_requests,
        b.failed_requests
    );
    if json {
        println!(
            "{}",
            serde_json::to_string(report).expect("report serialises")
        );
    }
}

/// Starts the hosts, each with an empty replica of the group; none is bootstrapped.
/// Host 4's replica too: an empty, uninitialised member-to-be, as the control plane
/// creates it before adding it as a learner.
async fn start_hosts(
    secret: &str,
    snapshot_every_entries: Option<u64>,
) -> anyhow::Result<(HostThreads, BTreeMap<NodeId, Host>)> {
    let (threads, hosts) = HostThreads::start(HOSTS, secret, None).await?;
    let options = GroupOptions {
        snapshot_every_entries: snapshot_every_entries
            .unwrap_or(stator_replication::host::DEFAULT_SNAPSHOT_EVERY_ENTRIES),
        ..GroupOptions::default()
    };
    threads
        .run_on_all(move |_, host| async move {
            host.create_group(group(), options, Box::new(KvMachine::default()))
                .await?;
            Ok(())
        })
        .await?;
    Ok((threads, hosts))
}

/// The host whose replica leads, if exactly one does.
fn current_leader(hosts: &BTreeMap<NodeId, Host>) -> Option<NodeId> {
    let leaders: Vec<NodeId> = hosts
        .iter()
        .filter(|(_, h)| {
            h.status(group())
                .is_some_and(|s| s.role == ReplicaRole::Leader)
        })
        .map(|(id, _)| *id)
        .collect();
    (leaders.len() == 1).then(|| leaders[0])
}

/// Waits until `want` leads, asking it to run an election if another host does.
async fn wait_for_leader(hosts: &BTreeMap<NodeId, Host>, want: NodeId) -> anyhow::Result<()> {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    let mut last_elect = Instant::now();
    loop {
        match current_leader(hosts) {
            Some(l) if l == want => return Ok(()),
            Some(_) if last_elect.elapsed() > Duration::from_secs(1) => {
                if let Some(r) = hosts[&want].replica(group()) {
                    let _ = r.raft.trigger().elect().await;
                }
                last_elect = Instant::now();
            }
            _ => {}
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "host {want} did not become the leader within {SETTLE_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn fill_key(i: u64) -> String {
    format!("fill:{i:010}")
}

fn paced_key(n: u64) -> String {
    format!("paced:{n:010}")
}

/// `SET key <value_for(key)>` as the kv machine takes it.
/// A value of `value_bytes` that names its key, so a check can tell a stale one.
fn value_for(key: &str, value_bytes: usize) -> Vec<u8> {
    let mut v = key.as_bytes().to_vec();
    v.resize(value_bytes.max(v.len()), b'.');
    v
}

/// Writes fill keys from several clients until the leader reports `target_bytes` of
/// state; returns how many keys were written (all acknowledged).
async fn fill(
    hosts: &BTreeMap<NodeId, Host>,
    secret: &str,
    members: &[String],
    target_bytes: u64,
    value_bytes: usize,
) -> anyhow::Result<u64> {
    let per_key = (fill_key(0).len() + value_bytes) as u64;
    let mut written = 0u64;
    loop {
        let state = current_leader(hosts)
            .and_then(|l| hosts[&l].status(group()))
            .map_or(0, |s| s.state_bytes);
        if state >= target_bytes && written > 0 {
            return Ok(written);
        }
        let more = (target_bytes.saturating_sub(state) / per_key).max(FILL_CLIENTS as u64);
        let next = Arc::new(AtomicU64::new(written));
        let end = written + more;
        let tasks: Vec<_> = (0..FILL_CLIENTS)
            .map(|_| {
                let (next, members) = (next.clone(), members.to_vec());
                let client = ReplicaClient::new(secret);
                tokio::spawn(async move {
                    let mut leader = None;
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= end {
                            return Ok::<(), anyhow::Error>(());
                        }
                        let key = fill_key(i);
                        let value = value_for(&key, value_bytes);
                        let (kv, deadline) = ((key.as_str(), value.as_slice()), OP_DEADLINE);
                        let reply = kv_set(&client, group(), &members, &mut leader, kv, deadline)
                            .await
                            .with_context(|| format!("fill write {key}"))?;
                        anyhow::ensure!(reply == b"+OK\r\n", "fill write {key}: {reply:?}");
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("fill task panicked")?;
        }
        written = end;
    }
}

struct WriterOutcome {
    /// One recorder per phase.
    recorders: Vec<Recorder>,
    /// Sequence numbers of acknowledged paced writes.
    acked: Vec<u64>,
    /// Ticks not sent (see [`MAX_QUEUED`]).
    missed: u64,
    /// Scheduled time and latency of every write scheduled during the move (a failed
    /// one counts with its time to failure).
    during: Vec<(Instant, Duration)>,
}

/// Writes at a fixed rate on a [`PacedLoad`] over a pool of clients (one request in
/// flight per client, because a session's sequence numbers must arrive in order).
struct PacedWriter {
    load: PacedLoad<bool, (ReplicaClient, Option<String>)>,
    /// When each phase after [`WARMING`] began.
    phase_starts: Vec<Instant>,
}

impl PacedWriter {
    fn start(secret: &str, members: Vec<String>, rate_per_sec: u32, value_bytes: usize) -> Self {
        let options = PaceOptions {
            rate_per_sec,
            max_in_flight: MAX_IN_FLIGHT,
            max_queued: MAX_QUEUED,
        };
        let (secret, members) = (secret.to_string(), Arc::new(members));
        let make = move || (ReplicaClient::new(&secret), None);
        let load = PacedLoad::start(options, make, move |(client, mut leader), tick| {
            let members = members.clone();
            async move {
                let key = paced_key(tick.seq);
                let value = value_for(&key, value_bytes);
                let kv = (key.as_str(), value.as_slice());
                let result = kv_set(&client, group(), &members, &mut leader, kv, OP_DEADLINE).await;
                let ok = matches!(&result, Ok(r) if r == b"+OK\r\n");
                ((client, leader), ok)
            }
        });
        PacedWriter {
            load,
            phase_starts: Vec::new(),
        }
    }

    /// Requests scheduled from now on count in `phase`.
    fn enter(&mut self, phase: usize) {
        debug_assert_eq!(phase, self.phase_starts.len() + 1, "phases in order");
        self.phase_starts.push(Instant::now());
    }

    /// Stops pacing, waits for the requests in flight and returns what they saw.
    async fn stop(self) -> WriterOutcome {
        let record = self.load.finish().await;
        let mut recorders: Vec<Recorder> = (WARMING..=PHASE_AFTER)
            .map(|_| Recorder::default())
            .collect();
        let mut acked = Vec::new();
        let mut during = Vec::new();
        for c in &record.completed {
            let phase = self
                .phase_starts
                .iter()
                .filter(|start| **start <= c.tick.scheduled)
                .count();
            if phase == PHASE_DURING {
                during.push((c.tick.scheduled, c.latency()));
            }
            if c.result {
                acked.push(c.tick.seq);
                recorders[phase].record(c.latency());
            } else {
                recorders[phase].errors += 1;
            }
        }
        WriterOutcome {
            recorders,
            acked,
            missed: record.missed,
            during,
        }
    }
}

/// Repeats the leader's reconcile step until the group's voters are `desired`, as the
/// control plane's reconciler does; logs each step that changed something.
async fn move_replica(
    hosts: &BTreeMap<NodeId, Host>,
    desired: &BTreeMap<NodeId, String>,
    timeline: &Timeline,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut last_step = None;
    loop {
        // Every host is asked: only a leader acts. A removed ex-leader may still see the
        // new configuration as its own, so only a desired member's InSync counts.
        for (id, host) in hosts {
            let step_started = Instant::now();
            let step = host.reconcile_membership(group(), desired).await;
            let took = step_started.elapsed();
            let took = if took > SLOW_STEP {
                format!(" (step took {took:.1?})")
            } else {
                String::new()
            };
            match step {
                Ok(MembershipStep::NotLeader) => {}
                Ok(MembershipStep::InSync) if desired.contains_key(id) => {
                    timeline.event(format!("host {id}: reconcile InSync{took}"));
                    return Ok(());
                }
                Ok(step) => {
                    let shown = format!("{step:?}");
                    if last_step.as_ref() != Some(&shown) || !took.is_empty() {
                        timeline.event(format!("host {id}: reconcile {shown}{took}"));
                        last_step = Some(shown);
                    }
                }
                Err(e) => timeline.event(format!("host {id}: reconcile error {e}{took}")),
            }
        }
        anyhow::ensure!(
            started.elapsed() < MIGRATION_TIMEOUT,
            "membership not in sync within {MIGRATION_TIMEOUT:?}"
        );
        tokio::time::sleep(RECONCILE_PAUSE).await;
    }
}

/// Waits until the members of `desired` have applied the same index and hold the same
/// app snapshot; returns it, or `None` if they do not within the settle timeout.
async fn converged_state(
    hosts: &BTreeMap<NodeId, Host>,
    desired: &BTreeMap<NodeId, String>,
) -> Option<Vec<u8>> {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    while Instant::now() < deadline {
        let mut states = Vec::new();
        for id in desired.keys() {
            let replica = hosts[id].replica(group())?;
            let applied = replica.sm.last_applied_index().await;
            let snapshot = replica.sm.app_snapshot().await.ok()?;
            states.push((applied, snapshot));
        }
        if states.windows(2).all(|w| w[0] == w[1]) {
            return states.pop().map(|(_, s)| s);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// Acknowledged writes whose value is missing or wrong in `machine`.
fn count_lost(machine: &KvMachine, filled: u64, acked: &[u64], value_bytes: usize) -> u64 {
    let keys = (0..filled)
        .map(fill_key)
        .chain(acked.iter().map(|n| paced_key(*n)));
    keys.filter(|key| {
        let got = machine.query_argv(
            machine.now_ms(),
            &[b"GET".to_vec(), key.as_bytes().to_vec()],
        );
        got != Value::Bulk(Some(value_for(key, value_bytes)))
    })
    .count() as u64
}

/// The CRIU-style move of the same state, measured: rebuild a live copy of the state
/// (untimed: the process being moved), then, timed, dump it to an image, stream the image
/// over loopback TCP to a receiver thread that restores it, and wait for its "ready".
async fn stop_and_copy(snapshot: Vec<u8>, rate_per_sec: u32) -> anyhow::Result<Baseline> {
    tokio::task::spawn_blocking(move || {
        let source = KvMachine::from_snapshot(&snapshot)
            .map_err(|e| anyhow::anyhow!("decoding the state: {e}"))?;
        drop(snapshot);
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let receiver = std::thread::spawn(move || -> anyhow::Result<Duration> {
            let (mut conn, _) = listener.accept()?;
            let mut len = [0u8; 8];
            conn.read_exact(&mut len)?;
            let mut image = vec![0u8; u64::from_le_bytes(len) as usize];
            conn.read_exact(&mut image)?;
            let received = Instant::now();
            let restored = KvMachine::from_snapshot(&image)
                .map_err(|e| anyhow::anyhow!("restoring the image: {e}"))?;
            let restore = received.elapsed();
            conn.write_all(&[1])?;
            drop(restored);
            Ok(restore)
        });
        let mut conn = std::net::TcpStream::connect(addr)?;
        conn.set_nodelay(true)?;
        // Downtime starts when writes stop: the dump.
        let stopped = Instant::now();
        let image = source.to_snapshot();
        let dump = stopped.elapsed();
        conn.write_all(&(image.len() as u64).to_le_bytes())?;
        conn.write_all(&image)?;
        let mut ready = [0u8; 1];
        conn.read_exact(&mut ready)?;
        let downtime = stopped.elapsed();
        let restore = receiver.join().expect("receiver panicked")?;
        // The copy is what remains once the dump and the restore are accounted for.
        let transfer = downtime.saturating_sub(dump).saturating_sub(restore);
        let ms = |d: Duration| round2(d.as_secs_f64() * 1000.0);
        let queued = (downtime.as_secs_f64() * f64::from(rate_per_sec)).floor() as u64;
        let failed = (downtime.saturating_sub(OP_DEADLINE).as_secs_f64() * f64::from(rate_per_sec))
            .floor() as u64;
        Ok(Baseline {
            models: "checkpoint/restore of the state alone: serialise the kv state, copy it \
                     over loopback TCP, deserialise it; writes stop for the whole time. \
                     Leaves out what CRIU adds (freezing the process, dumping every memory \
                     page rather than the live data, re-creating the process and its \
                     sockets, moving the address), so it is a lower bound on CRIU's downtime",
            image_bytes: image.len() as u64,
            dump_ms: ms(dump),
            transfer_ms: ms(transfer),
            restore_ms: ms(restore),
            baseline_stop_and_copy_downtime_ms: ms(downtime),
            queued_requests: queued,
            failed_requests: failed,
        })
    })
    .await
    .expect("baseline panicked")
}
