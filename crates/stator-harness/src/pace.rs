//! Paced load: requests started on a fixed schedule, whatever the system under test does.
//!
//! A closed-loop client (send, wait for the reply, send the next) slows down when the
//! server stalls and so never records the requests it would have sent meanwhile:
//! coordinated omission hides the stall. [`PacedLoad`] instead schedules tick `n` at
//! `start + n / rate` by the clock, and every request's latency is taken from its
//! *scheduled* time, so the time a tick waited for a free connection counts.
//!
//! Concurrency is bounded twice: at most [`PaceOptions::max_in_flight`] requests run at
//! once (each on one of a pool of client states, made on demand and reused, so a client
//! state never has two requests in flight), and at most [`PaceOptions::max_queued`]
//! further ticks wait for one. A tick beyond both is *missed*: not sent, and counted in
//! [`PacedRecord::missed`], so a benchmark can report it instead of hiding it.
//!
//! The failover and migration benchmarks and chaos's clients all run on it.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;

/// One scheduled request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tick {
    /// 0, 1, 2, ... in schedule order, missed ticks included.
    pub seq: u64,
    /// When the request was due: the start of its latency.
    pub scheduled: Instant,
}

/// A request that ran, and what it returned.
#[derive(Debug, Clone)]
pub struct Completed<R> {
    /// When it was due.
    pub tick: Tick,
    /// When its operation returned.
    pub done: Instant,
    /// What the operation returned.
    pub result: R,
}

impl<R> Completed<R> {
    /// From the scheduled time to the reply: waiting for a connection included.
    pub fn latency(&self) -> Duration {
        self.done.saturating_duration_since(self.tick.scheduled)
    }
}

/// How fast and how wide to drive the load.
#[derive(Debug, Clone, Copy)]
pub struct PaceOptions {
    /// Ticks per second (at least 1).
    pub rate_per_sec: u32,
    /// Requests running at once; also the most client states ever made.
    pub max_in_flight: usize,
    /// Ticks waiting for a free client state beyond those; a tick past this is missed.
    pub max_queued: usize,
}

impl PaceOptions {
    /// The time between two ticks.
    pub fn period(&self) -> Duration {
        Duration::from_secs_f64(1.0 / f64::from(self.rate_per_sec.max(1)))
    }
}

/// Everything a [`PacedLoad`] did, once stopped.
#[derive(Debug)]
pub struct PacedRecord<R, S> {
    /// The requests that ran, in schedule order.
    pub completed: Vec<Completed<R>>,
    /// Ticks scheduled, missed ones included.
    pub scheduled: u64,
    /// Ticks not sent because every client state was busy and the queue was full.
    pub missed: u64,
    /// The client states, for whatever they gathered (error samples, say).
    pub states: Vec<S>,
}

/// What the pacing loop and the requests share.
struct Shared<R, S> {
    completed: Mutex<Vec<Completed<R>>>,
    /// Idle client states; last in, first out, so a light load reuses one warm client.
    idle: Mutex<Vec<S>>,
}

/// A running paced load; [`PacedLoad::finish`] stops it and returns its record.
pub struct PacedLoad<R, S> {
    stop: watch::Sender<bool>,
    /// Returns (scheduled, missed).
    pacer: JoinHandle<(u64, u64)>,
    shared: Arc<Shared<R, S>>,
    /// One permit per tick that is queued or running; all back once every request is done.
    pending: Arc<Semaphore>,
    pending_permits: usize,
}

impl<R: Send + 'static, S: Send + 'static> PacedLoad<R, S> {
    /// Starts ticking now. Each tick takes an idle client state (or `make`s one), runs
    /// `op(state, tick)` and puts the state back; `op` returns the state with its result.
    pub fn start<M, F, Fut>(options: PaceOptions, make: M, op: F) -> Self
    where
        M: Fn() -> S + Send + Sync + 'static,
        F: Fn(S, Tick) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = (S, R)> + Send + 'static,
    {
        let (stop, mut stop_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            completed: Mutex::new(Vec::new()),
            idle: Mutex::new(Vec::new()),
        });
        let max_in_flight = options.max_in_flight.max(1);
        let pending_permits = max_in_flight + options.max_queued;
        let pending = Arc::new(Semaphore::new(pending_permits));
        let in_flight = Arc::new(Semaphore::new(max_in_flight));
        let (make, op) = (Arc::new(make), Arc::new(op));
        let period = options.period();
        let pacer = {
            let (shared, pending) = (shared.clone(), pending.clone());
            tokio::spawn(async move {
                let mut next = tokio::time::Instant::now();
                let (mut seq, mut missed) = (0u64, 0u64);
                loop {
                    tokio::select! {
                        biased;
                        _ = stop_rx.changed() => break,
                        _ = tokio::time::sleep_until(next) => {}
                    }
                    // Behind schedule (a busy runtime), the due ticks follow at once.
                    let tick = Tick {
                        seq,
                        scheduled: next.into_std(),
                    };
                    seq += 1;
                    next += period;
                    let Ok(queued) = pending.clone().try_acquire_owned() else {
                        missed += 1;
                        continue;
                    };
                    let (in_flight, shared) = (in_flight.clone(), shared.clone());
                    let (make, op) = (make.clone(), op.clone());
                    tokio::spawn(async move {
                        let _queued = queued;
                        // The semaphore is fair: ticks start in schedule order.
                        let _running = in_flight.acquire_owned().await.expect("never closed");
                        let idle = shared.idle.lock().expect("idle lock").pop();
                        let state = idle.unwrap_or_else(|| make());
                        let (state, result) = op(state, tick).await;
                        let done = tokio::time::Instant::now().into_std();
                        shared.idle.lock().expect("idle lock").push(state);
                        shared
                            .completed
                            .lock()
                            .expect("completed lock")
                            .push(Completed { tick, done, result });
                    });
                }
                (seq, missed)
            })
        };
        PacedLoad {
            stop,
            pacer,
            shared,
            pending,
            pending_permits,
        }
    }

    /// Requests completed so far.
    pub fn completed_so_far(&self) -> usize {
        self.shared.completed.lock().expect("completed lock").len()
    }

    /// Stops ticking, lets queued and running requests finish, and returns the record.
    pub async fn finish(self) -> PacedRecord<R, S> {
        let _ = self.stop.send(true);
        let (scheduled, missed) = self.pacer.await.expect("pacer panicked");
        // Every request holds a pending permit until it has recorded its result.
        let permits = u32::try_from(self.pending_permits).unwrap_or(u32::MAX);
        let _all = self
            .pending
            .acquire_many(permits)
            .await
            .expect("never closed");
        let mut completed =
            std::mem::take(&mut *self.shared.completed.lock().expect("completed lock"));
        completed.sort_by_key(|c| c.tick.seq);
        let states = std::mem::take(&mut *self.shared.idle.lock().expect("idle lock"));
        PacedRecord {
            completed,
            scheduled,
            missed,
            states,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Paused time: sleeps advance the clock at once, so the schedule is exact.
    #[tokio::test(start_paused = true)]
    async fn a_fast_system_gets_every_tick_on_schedule() {
        let options = PaceOptions {
            rate_per_sec: 100,
            max_in_flight: 4,
            max_queued: 16,
        };
        let load = PacedLoad::start(options, || 0u32, |n, _tick| async move { (n + 1, ()) });
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        let record = load.finish().await;
        assert_eq!(record.missed, 0);
        assert_eq!(record.completed.len() as u64, record.scheduled);
        assert!(record.scheduled >= 100, "{} ticks in 1 s", record.scheduled);
        // One warm client state served the whole light load.
        assert_eq!(record.states.len(), 1);
        assert_eq!(record.states[0] as usize, record.completed.len());
        let seqs: Vec<u64> = record.completed.iter().map(|c| c.tick.seq).collect();
        assert_eq!(seqs, (0..record.scheduled).collect::<Vec<_>>());
        let gaps: Vec<Duration> = record
            .completed
            .windows(2)
            .map(|w| w[1].tick.scheduled - w[0].tick.scheduled)
            .collect();
        assert!(gaps.iter().all(|g| *g == options.period()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_stall_counts_in_latency_and_overflow_is_missed() {
        let options = PaceOptions {
            rate_per_sec: 100,
            max_in_flight: 1,
            max_queued: 10,
        };
        // The first request stalls for a second; the rest answer at once.
        let load = PacedLoad::start(
            options,
            || (),
            |(), tick| async move {
                if tick.seq == 0 {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                ((), tick.seq)
            },
        );
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        let record = load.finish().await;
        // During the stall 10 ticks queued behind the first and the rest were missed.
        assert!(record.missed >= 80, "missed {}", record.missed);
        assert_eq!(
            record.completed.len() as u64 + record.missed,
            record.scheduled
        );
        // A queued tick's latency runs from when it was due, not from when it was sent.
        let queued = &record.completed[1];
        assert_eq!(queued.result, 1);
        assert!(queued.latency() >= Duration::from_millis(900));
        // After the stall the load is back on schedule with nothing waiting.
        let last = record.completed.last().expect("some completed");
        assert!(last.latency() < Duration::from_millis(10));
    }
}
