//! Linearizability of per-key registers: the Wing & Gong search with Lowe's cache, the
//! algorithm behind Porcupine and Knossos.
//!
//! The history is split by key (a register per key is independent of the others), and
//! each key is checked alone. `fail` operations are dropped (they did not happen), reads
//! that did not answer `ok` are dropped (they observed nothing), and `unknown` writes get a
//! return time of +infinity: they may take effect at any point after their call, or never.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;

use crate::error::CheckError;
use crate::history::{HistoryEntry, Op, Status};

/// Search steps allowed per key before giving up with `undetermined`. The search is
/// exponential in the worst case; this keeps a pathological key to seconds, while the
/// histories stator's chaos runs produce finish in far fewer steps.
pub const MAX_SEARCH_STEPS_PER_KEY: u64 = 10_000_000;

/// Memory allowed for the cache of visited (linearized set, value) pairs of one key before
/// giving up with `undetermined`: bounded so a long history cannot exhaust the machine.
pub const MAX_CACHE_BYTES_PER_KEY: usize = 256 * 1024 * 1024;

/// Rough cost of one cache entry: the 128-bit fingerprint of the linearized set, the
/// value, and the hash table's slot and control byte at its usual load.
const CACHE_ENTRY_BYTES: usize = 48;

/// Outcome for the whole history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Every key is linearizable.
    Ok,
    /// At least one key is not.
    Anomaly,
    /// No anomaly found, but at least one key exceeded the search bound.
    Undetermined,
}

/// Outcome for one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", rename_all = "lowercase")]
pub enum KeyVerdict {
    /// A linearization exists.
    Ok,
    /// No linearization exists.
    Anomaly(Anomaly),
    /// The search hit a [`SearchLimits`] bound (by default [`MAX_SEARCH_STEPS_PER_KEY`] or
    /// [`MAX_CACHE_BYTES_PER_KEY`]). Never reported as ok.
    Undetermined {
        /// Which bound was hit.
        reason: String,
    },
}

/// Why a key is not linearizable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Anomaly {
    /// One or two sentences naming the operation that cannot be placed and why.
    pub explanation: String,
    /// The operations involved: the one that cannot be placed first, then the write whose
    /// value the register held at that point, if any.
    pub ops: Vec<HistoryEntry>,
}

/// The result of [`check_history`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Overall verdict.
    pub verdict: Verdict,
    /// Per-key outcome, in key order.
    pub keys: BTreeMap<String, KeyVerdict>,
}

impl Report {
    /// The keys that are not linearizable, with why.
    pub fn anomalies(&self) -> impl Iterator<Item = (&str, &Anomaly)> {
        self.keys.iter().filter_map(|(key, verdict)| match verdict {
            KeyVerdict::Anomaly(anomaly) => Some((key.as_str(), anomaly)),
            _ => None,
        })
    }
}

/// Bounds on the search effort for one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SearchLimits {
    /// Search steps before giving up.
    pub max_steps: u64,
    /// Cache memory before giving up.
    pub max_cache_bytes: usize,
}

impl Default for SearchLimits {
    fn default() -> Self {
        SearchLimits {
            max_steps: MAX_SEARCH_STEPS_PER_KEY,
            max_cache_bytes: MAX_CACHE_BYTES_PER_KEY,
        }
    }
}

/// Checks that every key of `history` behaves like a linearizable register whose initial
/// value is null (missing), with the default [`SearchLimits`]. Fails only on a malformed
/// entry.
pub fn check_history(history: &[HistoryEntry]) -> Result<Report, CheckError> {
    check_history_with(history, SearchLimits::default())
}

/// [`check_history`] with explicit search limits.
pub fn check_history_with(
    history: &[HistoryEntry],
    limits: SearchLimits,
) -> Result<Report, CheckError> {
    let mut by_key: BTreeMap<&str, Vec<&HistoryEntry>> = BTreeMap::new();
    for (index, entry) in history.iter().enumerate() {
        entry.validate(index + 1)?;
        by_key.entry(entry.key.as_str()).or_default().push(entry);
    }
    let keys: BTreeMap<String, KeyVerdict> = by_key
        .into_iter()
        .map(|(key, entries)| (key.to_string(), check_key(&entries, limits)))
        .collect();
    let verdict = if keys.values().any(|v| matches!(v, KeyVerdict::Anomaly(_))) {
        Verdict::Anomaly
    } else if keys
        .values()
        .any(|v| matches!(v, KeyVerdict::Undetermined { .. }))
    {
        Verdict::Undetermined
    } else {
        Verdict::Ok
    };
    Ok(Report { verdict, keys })
}

/// Register values interned per key; 0 is null (missing).
type ValueId = u32;
const NULL_VALUE: ValueId = 0;

/// An operation that takes part in the search.
struct SearchOp<'a> {
    entry: &'a HistoryEntry,
    set: bool,
    value: ValueId,
    /// `None`: unknown write, may take effect at any time after the call, or never.
    return_ns: Option<u64>,
}

/// Checks the operations of one key.
fn check_key<'h>(entries: &[&'h HistoryEntry], limits: SearchLimits) -> KeyVerdict {
    let mut values: HashMap<&'h str, ValueId> = HashMap::new();
    let mut names: Vec<Option<&'h str>> = vec![None];
    let mut ops = Vec::new();
    for &entry in entries {
        let set = match (entry.op, entry.status) {
            (_, Status::Fail) | (Op::Get, Status::Unknown) => continue,
            (Op::Set, _) => true,
            (Op::Get, Status::Ok) => false,
        };
        let value = match entry.value.as_deref() {
            None => NULL_VALUE,
            Some(value) => *values.entry(value).or_insert_with(|| {
                names.push(Some(value));
                ValueId::try_from(names.len() - 1).expect("fewer than 2^32 values per key")
            }),
        };
        ops.push(SearchOp {
            entry,
            set,
            value,
            return_ns: entry.return_ns,
        });
    }

    // Shortcut with a clearer explanation than the search would give: a read of a value
    // that no write which may have happened ever wrote.
    let written: HashSet<ValueId> = ops.iter().filter(|op| op.set).map(|op| op.value).collect();
    if let Some(read) = ops
        .iter()
        .find(|op| !op.set && op.value != NULL_VALUE && !written.contains(&op.value))
    {
        return KeyVerdict::Anomaly(Anomaly {
            explanation: format!(
                "{} read a value that no acknowledged or pending write wrote (writes that \
                 failed count as never applied)",
                describe(read.entry)
            ),
            ops: vec![read.entry.clone()],
        });
    }

    Search::new(&ops).run(&names, limits)
}

/// One entry of the time-ordered list: the call or the return of an operation.
#[derive(Clone, Copy)]
struct ListEntry {
    op: usize,
    is_call: bool,
}

/// The Wing & Gong / Lowe search state over a doubly linked list of call and return entries.
struct Search<'a, 'ops> {
    ops: &'a [SearchOp<'ops>],
    entries: Vec<ListEntry>,
    /// Linked list over `entries`; index `entries.len()` is the head sentinel.
    next: Vec<usize>,
    prev: Vec<usize>,
    /// Index of each operation's return entry.
    return_entry: Vec<usize>,
}

/// End of the list.
const NIL: usize = usize::MAX;

impl<'a, 'ops> Search<'a, 'ops> {
    fn new(ops: &'a [SearchOp<'ops>]) -> Self {
        let mut entries: Vec<(u64, bool, usize)> = Vec::with_capacity(ops.len() * 2);
        for (index, op) in ops.iter().enumerate() {
            entries.push((op.entry.call_ns, true, index));
            entries.push((op.return_ns.unwrap_or(u64::MAX), false, index));
        }
        // By time; at equal times calls first, so touching operations count as concurrent
        // (the permissive reading, which never reports a false anomaly).
        entries.sort_by_key(|&(time_ns, is_call, op)| (time_ns, !is_call, op));
        let entries: Vec<ListEntry> = entries
            .into_iter()
            .map(|(_, is_call, op)| ListEntry { op, is_call })
            .collect();
        let head = entries.len();
        let mut next = vec![NIL; entries.len() + 1];
        let mut prev = vec![NIL; entries.len() + 1];
        let mut return_entry = vec![NIL; ops.len()];
        let mut last = head;
        for (index, entry) in entries.iter().enumerate() {
            next[last] = index;
            prev[index] = last;
            last = index;
            if !entry.is_call {
                return_entry[entry.op] = index;
            }
        }
        Search {
            ops,
            entries,
            next,
            prev,
            return_entry,
        }
    }

    /// Removes a call entry and its return entry from the list.
    fn lift(&mut self, call: usize) {
        let ret = self.return_entry[self.entries[call].op];
        for index in [call, ret] {
            let (before, after) = (self.prev[index], self.next[index]);
            self.next[before] = after;
            if after != NIL {
                self.prev[after] = before;
            }
        }
    }

    /// Puts back what [`Search::lift`] removed, in reverse order.
    fn unlift(&mut self, call: usize) {
        let ret = self.return_entry[self.entries[call].op];
        for index in [ret, call] {
            let (before, after) = (self.prev[index], self.next[index]);
            self.next[before] = index;
            if after != NIL {
                self.prev[after] = index;
            }
        }
    }

    fn run(mut self, names: &[Option<&str>], limits: SearchLimits) -> KeyVerdict {
        let head = self.entries.len();
        // The cache holds a Zobrist fingerprint of the linearized set instead of the set
        // itself, kept up to date in O(1) per step: a bitset per entry costs n/8 bytes, so
        // a 30-minute soak's 130,000 operations per key filled the cache after ~16,000
        // entries. A false match needs two different sets with the same 128-bit XOR; it
        // could only prune a branch (a false anomaly, never a false ok).
        let keys: Vec<u128> = (0..self.ops.len() as u64).map(zobrist_key).collect();
        let mut linearized: u128 = 0;
        let mut cache: HashSet<(u128, ValueId)> = HashSet::new();
        // (call entry, value before it) for every operation linearized so far.
        let mut stack: Vec<(usize, ValueId)> = Vec::new();
        let mut state = NULL_VALUE;
        // Operations with a real return must all be linearized; unknown writes need not
        // be, and a write can always be placed last, so none of them can block the end.
        let mut pending_returns = self.ops.iter().filter(|op| op.return_ns.is_some()).count();
        let mut deepest: Option<Deepest> = None;
        let mut steps: u64 = 0;
        let mut entry = self.next[head];

        while pending_returns > 0 {
            steps += 1;
            if steps > limits.max_steps {
                return KeyVerdict::Undetermined {
                    reason: format!(
                        "search exceeded {} steps over {} operations; \
                         check a shorter history",
                        limits.max_steps,
                        self.ops.len()
                    ),
                };
            }
            assert_ne!(
                entry, NIL,
                "search walked off the list with {pending_returns} returns pending"
            );
            let ListEntry { op, is_call } = self.entries[entry];
            if is_call {
                let candidate = &self.ops[op];
                let next_state = if candidate.set {
                    Some(candidate.value)
                } else if candidate.value == state {
                    Some(state)
                } else {
                    None
                };
                if let Some(next_state) = next_state {
                    linearized ^= keys[op];
                    if cache.insert((linearized, next_state)) {
                        if cache.len().saturating_mul(CACHE_ENTRY_BYTES) > limits.max_cache_bytes {
                            return KeyVerdict::Undetermined {
                                reason: format!(
                                    "search cache exceeded {} bytes over {} operations; \
                                     check a shorter history",
                                    limits.max_cache_bytes,
                                    self.ops.len()
                                ),
                            };
                        }
                        stack.push((entry, state));
                        state = next_state;
                        if candidate.return_ns.is_some() {
                            pending_returns -= 1;
                        }
                        self.lift(entry);
                        entry = self.next[head];
                        continue;
                    }
                    linearized ^= keys[op];
                }
                entry = self.next[entry];
            } else {
                // A return reached before its operation was placed: this branch is dead.
                if deepest.as_ref().is_none_or(|d| stack.len() > d.depth) {
                    deepest = Some(Deepest {
                        depth: stack.len(),
                        blocked_op: op,
                        state,
                        last_write: stack
                            .iter()
                            .rev()
                            .map(|&(call, _)| self.entries[call].op)
                            .find(|&placed| self.ops[placed].set),
                    });
                }
                let Some((call, previous_state)) = stack.pop() else {
                    let deepest = deepest.expect("recorded before the first backtrack");
                    return KeyVerdict::Anomaly(self.explain(&deepest, names));
                };
                let placed = self.entries[call].op;
                linearized ^= keys[placed];
                if self.ops[placed].return_ns.is_some() {
                    pending_returns += 1;
                }
                state = previous_state;
                self.unlift(call);
                entry = self.next[call];
            }
        }
        KeyVerdict::Ok
    }

    fn explain(&self, deepest: &Deepest, names: &[Option<&str>]) -> Anomaly {
        let blocked = &self.ops[deepest.blocked_op];
        let holds = show_value(names[deepest.state as usize]);
        let mut ops = vec![blocked.entry.clone()];
        let source = match deepest.last_write {
            Some(write) => {
                ops.push(self.ops[write].entry.clone());
                format!("written by {}", describe(self.ops[write].entry))
            }
            None => "the initial value".to_string(),
        };
        let explanation = format!(
            "no linearization of the {} operations on this key: at best {} of them can be \
             ordered before {} must have taken effect, and then the register holds {holds} \
             ({source})",
            self.ops.len(),
            deepest.depth,
            describe(blocked.entry),
        );
        Anomaly { explanation, ops }
    }
}

/// The Zobrist key of operation `index`: two rounds of SplitMix64, fixed so a run is
/// reproducible.
fn zobrist_key(index: u64) -> u128 {
    fn splitmix64(seed: u64) -> u64 {
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    let high = splitmix64(index.wrapping_mul(2));
    let low = splitmix64(index.wrapping_mul(2).wrapping_add(1));
    (u128::from(high) << 64) | u128::from(low)
}

/// The furthest the search got before a dead end: the best hint of where the anomaly is.
struct Deepest {
    depth: usize,
    blocked_op: usize,
    state: ValueId,
    last_write: Option<usize>,
}

fn show_value(value: Option<&str>) -> String {
    match value {
        Some(value) => format!("{value:?}"),
        None => "null".to_string(),
    }
}

/// `client 3 get "k1" -> "v9" [call 10 ns, return 20 ns, ok]`
fn describe(entry: &HistoryEntry) -> String {
    let action = match entry.op {
        Op::Get => format!(
            "get {:?} -> {}",
            entry.key,
            show_value(entry.value.as_deref())
        ),
        Op::Set => format!(
            "set {:?} = {}",
            entry.key,
            show_value(entry.value.as_deref())
        ),
    };
    let returned = match entry.return_ns {
        Some(return_ns) => format!("return {return_ns} ns"),
        None => "no return".to_string(),
    };
    format!(
        "client {} {action} [call {} ns, {returned}, {:?}]",
        entry.client, entry.call_ns, entry.status
    )
}
