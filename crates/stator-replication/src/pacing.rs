//! Learner catch-up pacing: the bytes a leader feeds a learner go through a token bucket,
//! so a new replica's catch-up does not take the CPU and the network the voters' writes
//! need (CockroachDB's `kv.snapshot_rebalance.max_rate`, TiKV's
//! `snap-io-max-bytes-per-sec`). A move or a re-replication then takes longer and costs
//! the same.
//!
//! The rules (`pace_decision` is the pure part, [`CatchUpPacer`] the host's state):
//! - Only a stream to a replica that is not a voter of the leader's effective membership
//!   is paced; commit never waits on it.
//! - Every learner stream of a host draws from one bucket at the host's rate: a host
//!   leading many groups that gain a learner at once (a node replaced) feeds them all
//!   together at that rate.
//! - Only while the learner, once it holds the append, is still at least one append
//!   ([`crate::host::MAX_ENTRIES_PER_APPEND`] entries) behind the leader's last entry:
//!   its last stretch, and the entries it gets once it is at the tip, go unpaced like a
//!   voter's. (Not the append's own length: after a partial success openraft sends the
//!   rest of the same range, a short append from a learner still far behind.)
//! - Never while the group's own writes come at more than half the rate (the log's growth
//!   in bytes over the last [`WRITE_RATE_WINDOW`]): a learner fed slower than the group
//!   writes would never catch up. Below that, it gains at least half the rate on the
//!   leader's log, so it finishes.
//! - A paced append carries at most [`PACED_APPEND_MAX_BYTES`] of entries, waits at most
//!   [`PACED_APPEND_MAX_WAIT`] (far below openraft's append timeout) and carries only the
//!   entries its tokens cover, at least one; openraft is told which part went
//!   (`PartialSuccess`) and sends the rest next. A snapshot chunk
//!   waits for its tokens at most [`PACED_SNAPSHOT_MAX_WAIT`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The catch-up rate a host uses unless configured. At 64 MiB/s a learner catching up
/// from a 64 MiB log took about a quarter of a core (against two thirds unpaced) and the
/// move about 1.1 s (against 0.35 s); at 32 MiB/s an eighth of a core and 2.2 s. On the
/// loaded 2-core test machine no rate improved the move's p99 measurably
/// (docs/BENCHMARKS.md, session 15, branch i15m): this one bounds a learner's share of a
/// core while keeping a move near a second.
pub const DEFAULT_LEARNER_CATCHUP_BYTES_PER_SEC: u64 = 64 << 20;
/// Longest a paced append waits for tokens before it goes with what it has (at least one
/// entry): openraft times an append out after the election timeout's upper bound (125 ms
/// by default), and the wait counts against it.
pub const PACED_APPEND_MAX_WAIT: Duration = Duration::from_millis(20);
/// A paced append carries at most this many bytes of entries (at least one entry), and
/// waits for this many bytes of tokens (or all it offers, if less) before it goes, up to
/// [`PACED_APPEND_MAX_WAIT`]. It bounds the work one append is on each host's runtime
/// thread: the leader's encode and send, the learner's decode, log append and apply,
/// none of which yields. Without it a paced append (which waited for 512 KiB of tokens)
/// took up to 128 entries, ~680 KB of ~5 KB write batches, and the learner's thread ran
/// 2-6 ms per append without a pause; at 128 KiB it runs ~0.4 ms an append on average
/// and at most 1.7 ms in any stall seen (docs/BENCHMARKS.md, session 16, i16m). It
/// stays tens of entries: sending whatever one entry's tokens allowed made appends of one
/// entry each, and at 32 MiB/s the leader's thread then ran 402 ms in a move instead of
/// 64, the learner's 410 instead of 208, for the same bytes (session 15, i15m).
pub const PACED_APPEND_MAX_BYTES: u64 = 128 << 10;
/// Longest a paced snapshot chunk waits (openraft's snapshot timeout is 10 s).
pub const PACED_SNAPSHOT_MAX_WAIT: Duration = Duration::from_millis(2_000);
/// The bucket holds this fraction of a second's rate: bursts stay short, so the voters
/// never see a learner take a core for long.
pub const BURST_DIVISOR: u64 = 16;
/// A bucket holds at least this much, so one large entry can go in one step.
pub const MIN_BURST_BYTES: u64 = 256 << 10;
/// Pacing is off for a group writing at least 1/this of the rate.
pub const WRITE_RATE_HEADROOM: u64 = 2;
/// The window over which a group's write rate is measured.
pub const WRITE_RATE_WINDOW: Duration = Duration::from_secs(1);

/// What a paced send may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    /// How many of the offered items (a prefix, at least one) to send.
    pub count: usize,
    /// How long to wait before sending them.
    pub wait: Duration,
}

/// A token bucket over bytes, driven by the caller's clock (`now` since any fixed origin),
/// so it reads no time itself.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate_bytes_per_sec: u64,
    burst_bytes: u64,
    /// Bytes that may go now; negative: owed (a send larger than the tokens).
    tokens: i64,
    /// The time `tokens` was refilled up to.
    filled_to: Duration,
}

impl TokenBucket {
    /// A full bucket at `rate_bytes_per_sec` (more than 0).
    pub fn new(rate_bytes_per_sec: u64, now: Duration) -> Self {
        assert!(rate_bytes_per_sec > 0, "a token bucket needs a rate");
        let burst_bytes = burst_for(rate_bytes_per_sec);
        TokenBucket {
            rate_bytes_per_sec,
            burst_bytes,
            tokens: burst_bytes as i64,
            filled_to: now,
        }
    }

    /// Its rate.
    pub fn rate_bytes_per_sec(&self) -> u64 {
        self.rate_bytes_per_sec
    }

    /// Changes the rate from `now` on (tokens held are kept, up to the new burst).
    pub fn set_rate(&mut self, rate_bytes_per_sec: u64, now: Duration) {
        assert!(rate_bytes_per_sec > 0, "a token bucket needs a rate");
        self.refill(now);
        self.rate_bytes_per_sec = rate_bytes_per_sec;
        self.burst_bytes = burst_for(rate_bytes_per_sec);
        self.tokens = self.tokens.min(self.burst_bytes as i64);
    }

    fn refill(&mut self, now: Duration) {
        if now <= self.filled_to {
            return;
        }
        let gained = self.bytes_in(now - self.filled_to);
        self.tokens = (self.tokens.saturating_add(gained)).min(self.burst_bytes as i64);
        self.filled_to = now;
    }

    fn bytes_in(&self, span: Duration) -> i64 {
        let bytes = span.as_nanos() * self.rate_bytes_per_sec as u128 / 1_000_000_000;
        bytes.min(i64::MAX as u128) as i64
    }

    fn time_for(&self, bytes: u64) -> Duration {
        let nanos = (bytes as u128 * 1_000_000_000).div_ceil(self.rate_bytes_per_sec as u128);
        Duration::from_nanos(nanos.min(u64::MAX as u128) as u64)
    }

    /// Admits a prefix of items of `sizes` bytes (at least one, the first even when it
    /// is larger than the bucket): waits until `min_bytes` (or all offered, if less) are
    /// covered, or `max_wait` at most, then takes as many as the tokens cover. What is
    /// taken beyond the tokens is owed (up to one burst) and delays the next caller.
    pub fn admit(
        &mut self,
        sizes: &[u64],
        min_bytes: u64,
        max_wait: Duration,
        now: Duration,
    ) -> Admission {
        let Some(&first) = sizes.first() else {
            return Admission {
                count: 0,
                wait: Duration::ZERO,
            };
        };
        self.refill(now);
        let offered: u64 = sizes.iter().sum();
        let wanted = min_bytes.min(offered).max(first);
        let short = (wanted as i64).saturating_sub(self.tokens);
        let wait = if short > 0 {
            self.time_for(short as u64).min(max_wait)
        } else {
            Duration::ZERO
        };
        // The wait's tokens, credited now: the caller sends at `now + wait`.
        self.refill(now + wait);
        let mut count = 0;
        let mut taken: u64 = 0;
        for &size in sizes {
            if count > 0 && (taken + size) as i64 > self.tokens {
                break;
            }
            taken += size;
            count += 1;
        }
        self.tokens = self
            .tokens
            .saturating_sub(taken as i64)
            .max(-(self.burst_bytes as i64));
        Admission { count, wait }
    }
}

/// How many of the items of `sizes` bytes (a prefix, at least one when any is offered)
/// fit in `max_bytes`.
pub fn prefix_within(sizes: &[u64], max_bytes: u64) -> usize {
    let mut taken: u64 = 0;
    let mut count = 0;
    for &size in sizes {
        taken = taken.saturating_add(size);
        if count > 0 && taken > max_bytes {
            break;
        }
        count += 1;
    }
    count
}

fn burst_for(rate_bytes_per_sec: u64) -> u64 {
    (rate_bytes_per_sec / BURST_DIVISOR).max(MIN_BURST_BYTES)
}

/// A group's write rate as its log grows on the leader: the bytes of entries sent for the
/// first time (to any member), per [`WRITE_RATE_WINDOW`].
#[derive(Debug, Clone, Default)]
pub struct WriteRate {
    /// Highest log index counted.
    counted_index: u64,
    window_start: Duration,
    window_bytes: u64,
    /// The window before, if it ended less than a window ago.
    previous_bytes: u64,
}

impl WriteRate {
    /// Counts the entries (index, bytes) of an append that are new to the log's count.
    pub fn record(&mut self, entries: impl IntoIterator<Item = (u64, u64)>, now: Duration) {
        self.roll(now);
        for (index, bytes) in entries {
            if index > self.counted_index {
                self.counted_index = index;
                self.window_bytes += bytes;
            }
        }
    }

    /// Highest log index counted (an append ending at or below it has nothing new).
    pub fn counted_index(&self) -> u64 {
        self.counted_index
    }

    /// Bytes per second: the larger of the last whole window and the current one so far.
    pub fn bytes_per_sec(&self, now: Duration) -> u64 {
        let mut rate = self.clone();
        rate.roll(now);
        let per_window = rate.previous_bytes.max(rate.window_bytes) as u128;
        (per_window * 1_000_000_000 / WRITE_RATE_WINDOW.as_nanos()) as u64
    }

    fn roll(&mut self, now: Duration) {
        let elapsed = now.saturating_sub(self.window_start);
        if elapsed < WRITE_RATE_WINDOW {
            return;
        }
        self.previous_bytes = if elapsed < 2 * WRITE_RATE_WINDOW {
            self.window_bytes
        } else {
            0
        };
        self.window_start = now;
        self.window_bytes = 0;
    }
}

/// Whether an append to a replica goes through the bucket: `behind_after_entries` is how
/// far behind the leader's last entry the replica still is once it holds the append.
pub fn pace_decision(
    limit_bytes_per_sec: u64,
    group_write_bytes_per_sec: u64,
    behind_after_entries: u64,
    target_is_voter: bool,
) -> bool {
    limit_bytes_per_sec > 0
        && behind_after_entries >= crate::host::MAX_ENTRIES_PER_APPEND
        && group_write_bytes_per_sec.saturating_mul(WRITE_RATE_HEADROOM) < limit_bytes_per_sec
        && !target_is_voter
}

/// A host's catch-up pacing: its rate (0: unlimited) and the bucket its learner streams
/// share.
#[derive(Debug)]
pub struct CatchUpPacer {
    origin: Instant,
    limit_bytes_per_sec: AtomicU64,
    bucket: Mutex<Option<TokenBucket>>,
    /// Bytes that went through the bucket, and the time appends and chunks waited in it.
    paced_bytes: AtomicU64,
    paced_wait_us: AtomicU64,
}

impl CatchUpPacer {
    /// A pacer at `limit_bytes_per_sec` (0: unlimited).
    pub fn new(limit_bytes_per_sec: u64) -> Self {
        CatchUpPacer {
            origin: Instant::now(),
            limit_bytes_per_sec: AtomicU64::new(limit_bytes_per_sec),
            bucket: Mutex::new(None),
            paced_bytes: AtomicU64::new(0),
            paced_wait_us: AtomicU64::new(0),
        }
    }

    /// The time since this pacer's origin: the clock its pure parts run on.
    pub fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    /// The rate (0: unlimited).
    pub fn limit_bytes_per_sec(&self) -> u64 {
        self.limit_bytes_per_sec.load(Ordering::Relaxed)
    }

    /// Changes the rate (0: unlimited) for the sends from now on.
    pub fn set_limit(&self, limit_bytes_per_sec: u64) {
        self.limit_bytes_per_sec
            .store(limit_bytes_per_sec, Ordering::Relaxed);
    }

    /// Admits a prefix of `sizes` through the shared bucket (everything at once when
    /// unlimited); see [`TokenBucket::admit`].
    pub fn admit(&self, sizes: &[u64], min_bytes: u64, max_wait: Duration) -> Admission {
        let limit = self.limit_bytes_per_sec();
        if limit == 0 {
            return Admission {
                count: sizes.len(),
                wait: Duration::ZERO,
            };
        }
        let now = self.now();
        let admission = {
            // A std mutex: nothing awaits while it is held.
            let mut bucket = self.bucket.lock().expect("pacing bucket poisoned");
            let bucket = match bucket.as_mut() {
                Some(b) => {
                    if b.rate_bytes_per_sec() != limit {
                        b.set_rate(limit, now);
                    }
                    b
                }
                None => bucket.insert(TokenBucket::new(limit, now)),
            };
            bucket.admit(sizes, min_bytes, max_wait, now)
        };
        let bytes: u64 = sizes[..admission.count].iter().sum();
        self.paced_bytes.fetch_add(bytes, Ordering::Relaxed);
        self.paced_wait_us
            .fetch_add(admission.wait.as_micros() as u64, Ordering::Relaxed);
        admission
    }

    /// Bytes paced and microseconds waited since the host started.
    pub fn totals(&self) -> (u64, u64) {
        (
            self.paced_bytes.load(Ordering::Relaxed),
            self.paced_wait_us.load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_full_bucket_admits_its_burst_at_once_then_paces_at_the_rate() {
        // 16 MiB/s: a burst of 1 MiB.
        let mut b = TokenBucket::new(16 * MIB, ms(0));
        let sizes = [256 << 10; 8]; // 2 MiB offered
        let a = b.admit(&sizes, 0, ms(20), ms(0));
        assert_eq!(
            a,
            Admission {
                count: 4,
                wait: Duration::ZERO
            }
        );
        // Empty now: the next 256 KiB needs 1/64 s = 15.625 ms.
        let a = b.admit(&sizes[4..], 0, ms(20), ms(0));
        assert_eq!(a.count, 1);
        assert_eq!(a.wait, Duration::from_nanos(15_625_000));
        // Over one second from empty, the bucket lets through its rate and no more.
        let mut now = ms(0);
        let mut b = TokenBucket::new(16 * MIB, now);
        b.admit(&[MIB], 0, ms(20), now);
        let mut sent = 0;
        while now < Duration::from_secs(1) {
            let a = b.admit(&[64 << 10; 128], 0, ms(20), now);
            now += a.wait;
            sent += a.count as u64 * (64 << 10);
            if a.wait.is_zero() {
                now += ms(1); // the send itself
            }
        }
        assert!(
            sent <= 17 * MIB,
            "sent {sent} bytes in a second at 16 MiB/s"
        );
        assert!(
            sent >= 15 * MIB,
            "sent {sent} bytes in a second at 16 MiB/s"
        );
    }

    #[test]
    fn an_empty_bucket_waits_for_a_batch_not_for_one_item() {
        // 32 MiB/s, emptied: 64 entries of 8 KiB offered, a batch of 512 KiB wanted.
        let mut b = TokenBucket::new(32 * MIB, ms(0));
        b.admit(&[2 * MIB], 0, ms(20), ms(0));
        let a = b.admit(&[8 << 10; 64], 512 << 10, ms(20), ms(0));
        assert_eq!(a.wait, Duration::from_micros(15_625), "512 KiB at 32 MiB/s");
        assert_eq!(a.count, 64);
        // Fewer bytes offered than the batch, and tokens for them: they go at once.
        let a = b.admit(&[8 << 10; 4], 512 << 10, ms(20), ms(40));
        assert_eq!(
            a,
            Admission {
                count: 4,
                wait: Duration::ZERO
            }
        );
        // A batch the cap does not cover goes with what the tokens cover by then.
        let mut slow = TokenBucket::new(MIB, ms(0));
        slow.admit(&[256 << 10], 0, ms(20), ms(0));
        let a = slow.admit(&[4 << 10; 64], 512 << 10, ms(20), ms(0));
        assert_eq!(a.wait, ms(20));
        assert_eq!(
            a.count, 5,
            "20 ms at 1 MiB/s is 20.97 KB: five 4 KiB entries"
        );
    }

    #[test]
    fn a_wait_is_capped_and_a_large_first_item_still_goes_owing_the_rest() {
        // 1 MiB/s: burst 256 KiB (the minimum).
        let mut b = TokenBucket::new(MIB, ms(0));
        let a = b.admit(&[MIB, 10], 0, ms(20), ms(0));
        assert_eq!(a.count, 1, "the first item always goes");
        assert_eq!(a.wait, ms(20), "and waits no longer than the cap");
        // It owes what it took beyond the tokens, at most one burst: the next caller waits.
        let a = b.admit(&[1], 0, ms(1_000), ms(20));
        assert!(a.wait > ms(200), "waited {:?}", a.wait);
        assert!(a.wait <= ms(270), "waited {:?}", a.wait);
    }

    #[test]
    fn tokens_never_exceed_the_burst_however_long_the_bucket_idles() {
        let mut b = TokenBucket::new(16 * MIB, ms(0));
        let a = b.admit(&[256 << 10; 64], 0, ms(20), Duration::from_secs(3_600));
        assert_eq!(a.count, 4);
    }

    #[test]
    fn a_new_rate_applies_from_then_on() {
        let mut b = TokenBucket::new(16 * MIB, ms(0));
        b.admit(&[MIB], 0, ms(20), ms(0));
        b.set_rate(64 * MIB, ms(0));
        // 4x the rate: 256 KiB takes 1/256 s.
        let a = b.admit(&[256 << 10], 0, ms(20), ms(0));
        assert_eq!(a.wait, Duration::from_nanos(3_906_250));
    }

    #[test]
    fn nothing_offered_is_nothing_admitted() {
        let mut b = TokenBucket::new(MIB, ms(0));
        assert_eq!(b.admit(&[], 0, ms(20), ms(0)).count, 0);
    }

    #[test]
    fn the_write_rate_counts_each_index_once_over_the_last_window() {
        let mut w = WriteRate::default();
        w.record([(1, 100), (2, 100)], ms(0));
        // A second member gets the same entries: not counted again.
        w.record([(1, 100), (2, 100), (3, 50)], ms(10));
        assert_eq!(w.counted_index(), 3);
        assert_eq!(w.bytes_per_sec(ms(500)), 250);
        // The next window: the last whole one still counts until it is a window old.
        w.record([(4, 10)], ms(1_200));
        assert_eq!(w.bytes_per_sec(ms(1_300)), 250);
        assert_eq!(w.bytes_per_sec(ms(2_300)), 10);
        // Silent for two windows: no rate.
        assert_eq!(w.bytes_per_sec(ms(5_000)), 0);
    }

    #[test]
    fn only_a_learner_far_behind_a_group_writing_well_below_the_limit_is_paced() {
        let limit = 32 * MIB;
        let far = crate::host::MAX_ENTRIES_PER_APPEND;
        assert!(pace_decision(limit, MIB, far, false));
        assert!(!pace_decision(limit, MIB, far, true), "voters never");
        assert!(!pace_decision(0, MIB, far, false), "0 is unlimited");
        assert!(!pace_decision(limit, MIB, far - 1, false), "near the tip");
        assert!(
            !pace_decision(limit, 16 * MIB, far, false),
            "a group writing half the limit would outrun its learner"
        );
    }

    #[test]
    fn an_unlimited_pacer_admits_everything_at_once() {
        let p = CatchUpPacer::new(0);
        assert_eq!(
            p.admit(&[MIB; 8], PACED_APPEND_MAX_BYTES, PACED_APPEND_MAX_WAIT),
            Admission {
                count: 8,
                wait: Duration::ZERO
            }
        );
    }

    #[test]
    fn an_append_is_cut_to_its_byte_cap_but_keeps_one_entry() {
        assert_eq!(prefix_within(&[], 100), 0);
        assert_eq!(
            prefix_within(&[40, 40, 40], 100),
            2,
            "a prefix within the cap"
        );
        assert_eq!(prefix_within(&[40, 60, 1], 100), 2, "exactly the cap");
        assert_eq!(
            prefix_within(&[500, 1], 100),
            1,
            "one entry larger than the cap goes alone"
        );
        assert_eq!(prefix_within(&[1; 8], 100), 8, "all of a short append");
    }
}
