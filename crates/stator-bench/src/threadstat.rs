//! What one thread of this process cost over a stretch of a benchmark, read from Linux's
//! `/proc/self/task/<tid>/{schedstat,stat}`: CPU time and time spent runnable but waiting
//! for a core (nanoseconds, from the scheduler's own counters), and minor page faults
//! (fresh memory touched for the first time). Load-robust beside a latency percentile:
//! the CPU and the faults of a piece of work do not change with the machine's load, and
//! the wait says how much of a latency was the machine's.
//!
//! The kernel adds a running thread's time when it is descheduled or at a tick, so a
//! reading of a thread busy at that instant lacks up to a few ms of its current slice.
//! Elsewhere than on Linux (or with the files unreadable) every reading is `None`.

use serde::Serialize;

/// One reading of a thread's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Counters {
    /// Time on a CPU.
    pub(crate) run_ns: u64,
    /// Time runnable, waiting for a CPU.
    pub(crate) wait_ns: u64,
    /// Minor page faults.
    pub(crate) minflt: u64,
}

/// The thread id of the calling thread.
pub(crate) fn current_tid() -> i32 {
    // SAFETY: gettid has no preconditions and cannot fail.
    unsafe { libc::gettid() }
}

/// The counters of thread `tid` of this process now.
pub(crate) fn read(tid: i32) -> Option<Counters> {
    let dir = format!("/proc/self/task/{tid}");
    let schedstat = std::fs::read_to_string(format!("{dir}/schedstat")).ok()?;
    let stat = std::fs::read_to_string(format!("{dir}/stat")).ok()?;
    parse(&schedstat, &stat)
}

/// Parses `schedstat` ("run_ns wait_ns slices") and `stat` (minflt is the 10th field,
/// counted after the command name, which is in parentheses and may hold spaces).
fn parse(schedstat: &str, stat: &str) -> Option<Counters> {
    let mut sched = schedstat.split_whitespace();
    let run_ns = sched.next()?.parse().ok()?;
    let wait_ns = sched.next()?.parse().ok()?;
    // Fields from the 3rd (state) on; minflt is the 10th, so the 8th of these.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let minflt = after_name.split_whitespace().nth(7)?.parse().ok()?;
    Some(Counters {
        run_ns,
        wait_ns,
        minflt,
    })
}

/// What a thread cost between two readings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Spent {
    /// CPU time, ms.
    pub cpu_ms: f64,
    /// Time runnable but not running (waiting for a core), ms.
    pub runnable_wait_ms: f64,
    /// Minor page faults.
    pub minor_faults: u64,
}

impl Spent {
    /// From `before` to `after`.
    pub(crate) fn between(before: Counters, after: Counters) -> Self {
        let ms = |a: u64, b: u64| a.saturating_sub(b) as f64 / 1e6;
        Spent {
            cpu_ms: (ms(after.run_ns, before.run_ns) * 10.0).round() / 10.0,
            runnable_wait_ms: (ms(after.wait_ns, before.wait_ns) * 10.0).round() / 10.0,
            minor_faults: after.minflt.saturating_sub(before.minflt),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_counters_past_a_name_with_spaces_and_parentheses() {
        let stat = "4242 (tokio (host 1)) S 1 2 3 4 5 6 777 8 9 10 11 12";
        let c = parse("1500000 250000 9\n", stat).unwrap();
        assert_eq!(
            c,
            Counters {
                run_ns: 1_500_000,
                wait_ns: 250_000,
                minflt: 777
            }
        );
    }

    #[test]
    fn the_calling_thread_can_be_read() {
        // The kernel adds a running thread's time at a tick or when it sleeps: run a
        // while, then sleep, so the reading has something to show.
        let spin = std::time::Instant::now();
        while spin.elapsed() < std::time::Duration::from_millis(5) {
            std::hint::black_box(0u64);
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
        if let Some(c) = read(current_tid()) {
            assert!(c.run_ns > 0);
        }
    }

    #[test]
    fn a_stretch_is_the_difference_of_two_readings() {
        let a = Counters {
            run_ns: 1_000_000,
            wait_ns: 0,
            minflt: 10,
        };
        let b = Counters {
            run_ns: 3_500_000,
            wait_ns: 1_000_000,
            minflt: 42,
        };
        let s = Spent::between(a, b);
        assert_eq!(s.cpu_ms, 2.5);
        assert_eq!(s.runnable_wait_ms, 1.0);
        assert_eq!(s.minor_faults, 32);
    }
}
